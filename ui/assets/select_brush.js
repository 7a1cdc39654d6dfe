() => {
  // Gradio 6.31's Sketchpad starts with no tool selected and ignores strokes until its
  // Brush button is clicked ("select the draw tool to start"). Select it for the person:
  // on load, and whenever the pad falls back to that state. English labels first, then
  // the first tool of the toolbar (the labels are translated in other browser languages).
  const pad = () => document.querySelector("#sketchpad");
  const brush = (root) =>
    root.querySelector('button[aria-label="Brush"]') || root.querySelector(".toolbar-wrap button");
  const select = () => {
    const root = pad();
    const button = root && brush(root);
    if (!button) return false;
    button.click();
    return true;
  };
  window.digitloopSelectBrush = select;
  let tries = 0;
  const timer = setInterval(() => {
    if (select() || ++tries > 600) clearInterval(timer);
  }, 100);
  // The "select the draw tool" overlay is the pad's `.empty.wrap`; act once per overlay.
  const seen = new WeakSet();
  new MutationObserver(() => {
    const overlay = pad()?.querySelector(".empty.wrap");
    if (overlay && !seen.has(overlay)) {
      seen.add(overlay);
      select();
    }
  }).observe(document.body, { childList: true, subtree: true });
}
