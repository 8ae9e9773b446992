"""The offline work: the backtest and its replay, on one process or on a Dask cluster.

``replayer`` holds the loop body every backtest process runs, ``sources`` the
inputs (files, directories, globs) cut into pieces, ``cluster`` the Dask client
(a given scheduler or a local cluster), and ``distributed`` the partitioned
backtest on it. Nothing here imports ``risk_engine.backtest``: it imports them.
"""
