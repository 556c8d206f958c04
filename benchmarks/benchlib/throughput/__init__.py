"""The throughput benchmark (``benchmarks/throughput.py``) besides its command line.

- :mod:`.matrix`: the tests and the default matrix of setups;
- :mod:`.results`: samples, results per configuration, medians and ratios;
- :mod:`.measure`: running the matrix (iperf3 through each tunnel, what the endpoints used);
- :mod:`.targets`: the native core's targets, judged from the results;
- :mod:`.report`: the text and Markdown report.

Who imports it: ``benchmarks/throughput.py`` and ``tests/benchmarks/test_throughput_script.py``.
"""
