"""Code shared by the benchmark scripts in ``benchmarks/`` (not an installed package).

Who imports it: ``throughput.py``, ``soak.py``, ``flood.py`` and ``clients.py``, run as
``python benchmarks/NAME.py`` (so ``benchmarks/`` is first on ``sys.path`` and this package and
the sibling script ``wggo`` import by name), and their tests in ``tests/benchmarks/`` (which put
``benchmarks/`` on ``sys.path``).

- :mod:`benchlib.host`: CPU time and memory of processes and of the machine, from ``/proc``;
- :mod:`benchlib.facts`: what the figures depend on (machine, builds, commit), and whether the
  measured code changed during a run;
- :mod:`benchlib.lifecycle`: the lock that keeps benchmarks from running at once, signals,
  the pre-flight checks and the command line a report quotes;
- :mod:`benchlib.netns`: other network namespaces (someone's tests) and waiting for them to go;
- :mod:`benchlib.tables`: number cells, medians, text and Markdown tables, pass/fail targets;
- :mod:`benchlib.pairs`: the kinds of endpoints (tunplug, wireguard-go builds), the pairs of
  them, and a tunnel between two throw-away namespaces (``throughput.py`` and ``flood.py``);
- :mod:`benchlib.throughput` and :mod:`benchlib.soak`: the parts of those two scripts besides
  their command lines.
"""
