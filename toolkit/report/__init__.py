"""Every view of a run: the live view, plain progress lines, the HTML report, its plots, tables and judge, and W&B."""
