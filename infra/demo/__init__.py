"""`signalops demo`: synthetic sources through the whole loop, drift-driven, shown live.

Nobody asks for a retrain: the demo injects a concept drift and the platform finds it
(the drift monitor), retrains on what came after it and promotes the new version.

Timeline (the live clock starts once the seeded history has reached the features):
- seeding: every entity gets a back-dated history of reports, so the mix of entity
  ages (and of window features such as counts over an hour) is the one the bootstrap
  model was trained on; without it the window features drift, rightly, on their own;
- all along: each entity reports every `bootstrap_step_s` (30 s) for
  `bootstrap_steps` (100) reports, then a new entity replaces it; bad records, late
  events and duplicates ride along. Each report is scored through serve's batch
  endpoint about 1.5 s later, and the answer's label (the synthetic truth's Bayes
  decision for the state the report shows) is posted naming the prediction:
  about `--rate` labels per second (20 by default);
- at 30-45 s: the sources' outage (nothing is sent);
- the drift: once `--drift-after` labels (1,000) have judged the champion (about
  65 s at 20 labels/s), the labelling function flips; the features do not change;
- then the monitor raises a performance drift after `drift.post_change_labels`
  labels since the change, the trainer trains on them and promotes; after
  `drift.refit_labels` it refits once more (signalops.yaml);
- the end: with `--duration 0`, once the newest drift event has a registered
  version and the version serving has been judged 200 times (about 3-5 minutes in
  all); Ctrl-C stops sooner. A summary of timings and accuracies is printed.

The truth before the drift is the one the champion learnt: the bootstrap's (seed
`bootstrap_seed`); a champion left by an earlier demo run on the same data directory
learnt the flipped truth, so the demo starts from whichever truth the champion
agrees with and flips it.
"""

from infra.demo.run import run_demo

__all__ = ["run_demo"]
