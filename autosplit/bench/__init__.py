"""Plan-quality and search-time benchmarks (``autosplit bench``, docs/bench.md).

``suite`` loads a case list, ``runner`` searches each case and tabulates the result,
``baselines`` and ``exhaustive`` give the yardsticks, ``check`` compares a run with the
committed baseline, ``table`` renders CSV and Markdown.
"""
