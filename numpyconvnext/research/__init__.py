"""Research at scale: a basket of symbols and a grid of configurations evaluated walk-forward
(``basket``), as independent tasks run locally or on Ray (``executors``), reported as
report.md/json/html (``report``, ``html``)."""
