// Every uncaught error and console.error of the page, kept where a browser test can read them.
window.__weftErrors = [];
window.addEventListener("error", (e) => window.__weftErrors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.__weftErrors.push("unhandled rejection: " + String(e.reason)));
(() => {
  const original = console.error.bind(console);
  console.error = (...args) => { window.__weftErrors.push(args.map(String).join(" ")); original(...args); };
})();
