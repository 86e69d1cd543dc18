"""The evaluate step: base vs candidate (vs champion) on the same held-out data, then the promotion gate.

`logic.evaluate_candidate` is the step as a plain function; `gate.decide` the gate; `metrics` the measures;
`report` the table, chart and HTML report. The KFP wrapper (component.py) imports the logic, never the reverse.
"""
