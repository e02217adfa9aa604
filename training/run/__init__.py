"""Running a training: the modules that compose the server side and the bank side.

``simulation`` (both apps in Flower's Simulation Engine), ``deployment`` (a local
SuperLink and one SuperNode per bank), ``city`` (train on the synthetic city, evaluate,
publish) and ``cli`` (``fedcredit train``).
"""
