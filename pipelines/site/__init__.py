"""Site acceptance: a served model checked on a hospital's own labelled images before go-live,
and the operating point (temperature, threshold) that hospital's scanners need.

    python -m pipelines.site accept --site NAME --model NAME [--version N | --label stable] \\
        --serving HOST:PORT --source DIR --manifest CSV ... --out DIR

``intake`` reads the images through the ingest readers and pseudonymizes patients, ``scoring``
asks the model server, ``split`` divides the patients, ``calibration`` chooses on one part,
``acceptance`` measures on the other, ``sizing`` says whether there are enough patients,
``verdict`` compares with the floors, ``report`` and ``figures`` write what a hospital keeps.
"""
