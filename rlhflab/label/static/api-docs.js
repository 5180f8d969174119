// /api/docs: start Swagger UI on this app's OpenAPI document. A file, not an inline script: the page has the
// app's strict Content-Security-Policy. "Try it out" sends the session's CSRF token (GET /api/csrf) on every call.
(function () {
  "use strict";
  var token = null;
  fetch("/api/csrf", { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (body) { token = body.csrf_token; })
    .catch(function () { token = null; });
  window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,  // the public validator is a request to another site
    requestInterceptor: function (req) {
      if (token) { req.headers["X-CSRF-Token"] = token; }
      return req;
    }
  });
})();
