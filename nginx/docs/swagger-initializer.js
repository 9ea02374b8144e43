// Swagger UI on the gateway's OpenAPI document. "Authorize" signs in with the OAuth2
// password flow at the document's token URL (/auth/token); "Try it out" calls the same
// origin. Nothing is fetched from elsewhere: no validator badge, no CDN.
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
    persistAuthorization: false,
  });
});
