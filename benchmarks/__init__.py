"""The project's benchmarks: the suite (``suite``), the served-model load test (``serve``), the load generator
(``loadtest``) and the command line that ``cnnserve bench`` exposes (``cli``). They live outside the product
package: a wheel install has none of this, and the service never imports it."""
