"""The study: summarise runs (summary, stats, decision), render tables/plots/reports, publish."""
