"""Canary rollouts: a metric-gated step controller over one actuator interface (local router or KServe).

    config.py      the rollout declared in params.yaml `canary:` (+ `--steps`), frozen into the state
    analysis.py    canary vs stable on the same window: per-metric verdict (value, threshold), step verdict
    quality.py     golden set from the champion's held-out split (lineage md5); ROUGE-L, embedding sim, judge
    loadgen.py     replays prompts through the router at a set rate (Flagger's load tester)
    state.py       durable rollout state + decisions + per-model lock, in the audit trail's database
    controller.py  the step loop and the entry points: start_rollout, resume_rollout, abort_rollout,
                   promote_rollout, rollout_status, rollout_history
    actuators/     base.Actuator (contract C4), local.LocalRouterActuator (router admin API), kserve
"""
