// Swagger UI over this appliance's own OpenAPI document; loaded from a file, never inline,
// so the page keeps a Content-Security-Policy without 'unsafe-inline' scripts.
"use strict";
(function () {
  var holder = document.getElementById("swagger");
  window.SwaggerUIBundle({ url: holder.dataset.specUrl, domNode: holder, deepLinking: true });
})();
