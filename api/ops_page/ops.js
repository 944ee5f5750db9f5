// Refreshes the operator's page: fetches its figures as HTML every few seconds and swaps them in; a
// sign-in that ended (expired, the token revoked) goes back to the sign-in form.
"use strict";
(function () {
  const panels = document.getElementById("panels");
  const every = 1000 * Number(panels.dataset.refreshS || "5");
  async function refresh() {
    try {
      const answer = await fetch("/ops/panels", { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401) {
        window.location.assign("/ops/sign-in");
        return;
      }
      if (answer.ok) {
        panels.innerHTML = await answer.text();
      }
    } catch (e) {
      // The API away for a moment: the next round tries again, the figures on screen stay.
    }
    window.setTimeout(refresh, every);
  }
  window.setTimeout(refresh, every);
})();
