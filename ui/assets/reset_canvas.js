(signal) => {
  // Empty the sketchpad for the next digit when the server sent a reset signal. The pad's
  // own "Clear canvas" button keeps the editor's state sound (setting the value from
  // Python leaves the 6.31 editor unable to draw), then the brush is selected again.
  if (!signal) return;
  const root = document.querySelector("#sketchpad");
  if (!root) return;
  const panel = [...root.querySelectorAll(".top-panel button")];
  const clear = root.querySelector('button[aria-label="Clear canvas"]') || panel[panel.length - 1];
  clear?.click();
  setTimeout(() => window.digitloopSelectBrush?.(), 50);
}
