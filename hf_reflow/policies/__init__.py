"""Policy adapters: the flow-matching view of LeRobot policies (`factory.py` finds one by `config.type`)."""
