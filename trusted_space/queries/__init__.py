"""The three query models side by side: what an analyst submits and what it gets back.

- :mod:`.score`: a joint score (:class:`~.score.Model`, :class:`~.score.ScoreQuery`,
  :class:`~.score.ScoreResult`);
- :mod:`.aggregate`: a statistic of one provider column over a cohort
  (:class:`~.aggregate.AggregateQuery`, :class:`~.aggregate.AggregateResult`);
- :mod:`.train`: a joint logistic regression (:class:`~.train.TrainParams`,
  :class:`~.train.TrainQuery`, :class:`~.train.TrainResult`);
- :mod:`.common`: the entity-id checks and the vocabulary they share (the strict JSON checks
  are :mod:`trusted_space.jsonpath`'s).

These are descriptions only (parsing, validation, JSON): the protocols that run them are in
:mod:`trusted_space.protocols` and import them from here. The package imports no submodule
itself, so importing one model does not load the others.
"""

__all__: list[str] = []
