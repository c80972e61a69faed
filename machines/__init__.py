"""Real workflows built on statemachine; the docs take their examples from here."""
