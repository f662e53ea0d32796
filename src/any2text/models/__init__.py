"""Model folders; each is self-contained so it can ship as remote code."""
