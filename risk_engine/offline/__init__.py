"""The offline work: read logs, replay, backtest, train, calibrate, evaluate, simulate.

``logs`` is the one reader and writer of the logs every command takes and
writes; ``sources`` cuts inputs into pieces; ``replayer`` is the loop body of
every backtest process, ``backtest`` runs it here or on a Dask cluster
(``cluster``, ``distributed``). ``replay`` builds the feature matrix
(score-then-learn) that ``train`` fits; ``evaluate``, ``calibrate``,
``deployment`` and ``synthetic_eval`` judge a model and its policy on labels
(``labels``), beside the ``freeman`` baseline; ``synthesize`` injects attacks
into a real log; ``simulate`` (a subpackage) writes synthetic logs. Nothing
here is imported by the online service.
"""
