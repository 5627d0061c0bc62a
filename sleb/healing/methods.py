"""The healing methods a user can ask for, in one place (CLI choices, HealSpec, the zoo's settings)."""

HEAL_METHODS = ("linear", "distill", "linear+distill")
