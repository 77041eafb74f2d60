"""Online River models (churn, purchase propensity): arrive with the models issue."""
