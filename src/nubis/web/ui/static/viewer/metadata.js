// The plain metadata view: the DICOM JSON of the instance on screen (from the series metadata
// resource) as a table of tag, keyword, VR and value, sequences indented under their items.

const MAX_VALUE_CHARACTERS = 240;
let keywords = null;

/** Keywords by tag, fetched once when the view is first opened (no patient data in it). */
function dictionary() {
  keywords ||= fetch("/ui/viewer/dictionary.json", { credentials: "same-origin" })
    .then((response) => (response.ok ? response.json() : {}))
    .catch(() => ({}));
  return keywords;
}

function tagText(tag) {
  return `(${tag.slice(0, 4)},${tag.slice(4)})`;
}

function valueText(element) {
  if (element.BulkDataURI) return "(bulk data, not shown)";
  if (element.InlineBinary) return `(binary, ${Math.floor((element.InlineBinary.length * 3) / 4)} bytes)`;
  const values = element.Value || [];
  const shown = values
    .map((value) => {
      if (value && typeof value === "object") {
        return [value.Alphabetic, value.Ideographic, value.Phonetic].filter(Boolean).join("=");
      }
      return String(value);
    })
    .join("\\");
  return shown.length > MAX_VALUE_CHARACTERS ? `${shown.slice(0, MAX_VALUE_CHARACTERS)}…` : shown;
}

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value; // as text: DICOM values never become markup
  if (className) td.className = className;
  row.append(td);
}

function rows(body, ds, depth, names) {
  for (const tag of Object.keys(ds).sort()) {
    const element = ds[tag] || {};
    const row = document.createElement("tr");
    row.dataset.depth = String(depth);
    cell(row, `${"› ".repeat(depth)}${tagText(tag)}`, "mono");
    cell(row, names[tag] || (Number.parseInt(tag.slice(0, 4), 16) % 2 ? "(private)" : ""));
    cell(row, element.vr || "", "mono");
    if (element.vr === "SQ") {
      const items = element.Value || [];
      cell(row, `${items.length} item${items.length === 1 ? "" : "s"}`);
      body.append(row);
      items.forEach((child, i) => {
        const itemRow = document.createElement("tr");
        itemRow.className = "item";
        cell(itemRow, `${"› ".repeat(depth + 1)}Item ${i + 1}`, "mono");
        cell(itemRow, "");
        cell(itemRow, "");
        cell(itemRow, "");
        body.append(itemRow);
        rows(body, child || {}, depth + 1, names);
      });
    } else {
      cell(row, valueText(element));
      body.append(row);
    }
  }
}

export class MetadataView {
  constructor(dialog) {
    this.dialog = dialog;
    this.body = dialog.querySelector("tbody");
    this.title = dialog.querySelector(".title");
    this.filter = dialog.querySelector("input[type=search]");
    this.filter.addEventListener("input", () => this.applyFilter());
    dialog.querySelector(".close").addEventListener("click", () => dialog.close());
  }

  async show(ds, title) {
    this.title.textContent = title;
    this.render(ds, {});
    if (!this.dialog.open) this.dialog.showModal();
    this.render(ds, await dictionary());
  }

  render(ds, names) {
    const body = document.createElement("tbody");
    rows(body, ds, 0, names);
    this.body.replaceWith(body);
    this.body = body;
    this.applyFilter();
  }

  applyFilter() {
    const wanted = this.filter.value.trim().toLowerCase();
    for (const row of this.body.rows) {
      row.hidden = wanted !== "" && !row.textContent.toLowerCase().includes(wanted);
    }
  }
}
