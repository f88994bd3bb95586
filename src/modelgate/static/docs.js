// Starts Swagger UI on /docs (routes/docs.py). A file rather than an inline script, so the page's
// Content-Security-Policy can forbid inline scripts; the spec URL comes from the page.
const container = document.getElementById("swagger-ui");
window.ui = window.SwaggerUIBundle({
  url: container.dataset.openapiUrl,
  domNode: container,
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // never send the spec to Swagger's online validator
  presets: [window.SwaggerUIBundle.presets.apis],
});
