"""canary_deploy step: the new version beside the champion, metric-gated traffic steps, promote or roll back."""
