"""Where events come from besides live traffic: the simulator (`feedloop simulate`) and
the MovieLens importer (`feedloop import-movielens`)."""
