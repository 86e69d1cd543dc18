"use strict";
// Says why the last sign-in failed (the server redirects back with ?error=key|name).
const why = new URLSearchParams(location.search).get("error");
const box = document.getElementById("login-error");
if (why) {
  box.textContent = why === "key" ? "Wrong API key." : "Names use letters, digits, space and ._@+- (at most 64).";
  box.hidden = false;
}
