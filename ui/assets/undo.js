() => {
  // Undo the last stroke with the pad's own Undo (the third button from the end of its
  // top panel: undo, redo, clear). The pad's change event then predicts again.
  const root = document.querySelector("#sketchpad");
  if (!root) return;
  const panel = [...root.querySelectorAll(".top-panel button")];
  const undo = root.querySelector('button[aria-label="Undo"]') || panel[panel.length - 3];
  if (undo && !undo.disabled) undo.click();
}
