"""The BentoML application: the service classes (``service``), the routes generated from the task registry
(``http``), request parsing (``requests``), the Open Inference Protocol (``v2``), metrics and the page (``static/``).
The only part of the serving package that knows BentoML's service API or HTTP."""
