// The study list and study page: a whole row opens its study (a bigger target on a phone);
// a series whose thumbnail cannot be drawn (a report, a non-image object) shows a plain tile.

for (const row of document.querySelectorAll("tr[data-href]")) {
  row.addEventListener("click", (event) => {
    if (event.target.closest("a, button, input, select, label")) return;
    window.location.assign(row.dataset.href);
  });
}

function noPicture(img) {
  img.classList.add("no-thumb");
  img.removeAttribute("src");
}

for (const img of document.querySelectorAll("img.thumb")) {
  if (img.complete && img.getAttribute("src") && img.naturalWidth === 0) {
    noPicture(img); // failed before this script ran
  } else {
    img.addEventListener("error", () => noPicture(img), { once: true });
  }
}
