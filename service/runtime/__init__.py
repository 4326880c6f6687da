"""Running exported files: sessions and providers (``sessions``), one loaded file with its execution plan
(``model``), batch policies (``policy``, ``tuning``), the batcher (``batching``), the runners the service talks to
(``runner``) and loading the served set (``loading``). No HTTP here."""
