"""Human evaluation (`python -m jaxlm.rate generate|serve|report`): blind pairwise rating of
generations in a local web page, stored in SQLite, reported with win rates, Bradley-Terry and
agreement. The web page and the statistics need the `rate` extra (Flask, scipy, choix,
krippendorff)."""
