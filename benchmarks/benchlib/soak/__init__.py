"""The soak (``benchmarks/soak.py``) besides its command line.

- :mod:`.samples`: what is read every interval (throughput, RSS, descriptors, threads, CPU, the
  flow log) and the rates between two samples;
- :mod:`.checks`: the verdict's checks and their thresholds;
- :mod:`.traffic`: the traffic through the gateway (iperf3, short connections) and the sampling;
- :mod:`.report`: the live lines and the Markdown table and verdict.

Who imports it: ``benchmarks/soak.py`` and ``tests/benchmarks/test_soak_script.py``.
"""
