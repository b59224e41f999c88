// Every page: the collapsed menu of narrow screens, and forms that ask first.
(function () {
  "use strict";
  // Under 700 px the header's links fold behind a "Menu" button (CSS shows
  // the button and hides the links while the header is not .open). Without
  // this script the button stays hidden and the links simply wrap.
  var header = document.querySelector("header.top");
  var toggle = document.getElementById("menu-toggle");
  if (header && toggle) {
    header.classList.add("collapsible");
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      var open = header.classList.toggle("open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  // <form data-confirm="dialog-id">: submitting opens that <dialog> (which
  // says what goes); the form is sent only when its "confirm" button closes
  // it. Cancel, Escape or a click outside leave everything as it was. A
  // browser without <dialog> asks the same question with confirm().
  Array.prototype.forEach.call(document.querySelectorAll("form[data-confirm]"), function (form) {
    var dialog = document.getElementById(form.getAttribute("data-confirm"));
    if (!dialog) return;
    if (typeof dialog.showModal !== "function") {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(dialog.textContent.replace(/\s+/g, " ").trim())) ev.preventDefault();
      });
      return;
    }
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      dialog.returnValue = "";
      dialog.showModal();
    });
    // The dialog has no padding of its own: a click on it is on the backdrop.
    dialog.addEventListener("click", function (ev) { if (ev.target === dialog) dialog.close("cancel"); });
    dialog.addEventListener("close", function () {
      if (dialog.returnValue === "confirm") form.submit();   // submit(): no second submit event
    });
  });
})();
