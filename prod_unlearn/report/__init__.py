"""Reporting: the bench report (Markdown + JSON), the Pareto Dominance Ratio and its plots."""
