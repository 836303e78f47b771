// Share pages: the Copy button next to a link shown once.
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", async () => {
    const input = document.getElementById(button.dataset.copy);
    if (!input) return;
    input.select();
    let copied = false;
    try {
      await navigator.clipboard.writeText(input.value);
      copied = true;
    } catch {
      // No clipboard permission (an insecure origin, a headless browser): the text stays
      // selected for Ctrl+C.
    }
    const status = document.querySelector("[data-copied]");
    if (status) {
      status.textContent = copied ? "Copied." : "Selected: press Ctrl+C (or long-press) to copy.";
      status.hidden = false;
    }
  });
}
