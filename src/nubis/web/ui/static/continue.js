// After signing in with the identity provider: go on to the page asked for. The session
// cookie is SameSite=Strict and this page ended a redirect chain that began on the provider's
// site; a navigation this page starts is same-site, so the cookie goes along (web/ui/oidc.py).
const next = document.getElementById("continue");
if (next) {
  window.location.replace(next.getAttribute("href"));
}
