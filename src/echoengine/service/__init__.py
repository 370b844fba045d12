"""The detection service behind ``echoengine serve``: HTTP API, detection store, worker and MQTT bridge.

Modules, from the bottom up:

``schema``
    The tables (SQLAlchemy ORM): sensors, recordings (also the queue), models, detections, reviews.
``db`` and ``migrations/``
    An engine for any SQLAlchemy URL (SQLite, PostgreSQL); Alembic migrations run at start-up.
``store``
    Audio files named by content hash under ``STORE/audio/``.
``ingest``
    Audio into the queue: :func:`~echoengine.service.ingest.ingest` (bytes, for the MQTT bridge) and
    :func:`~echoengine.service.ingest.ingest_stream` (HTTP uploads).
``served``
    The bundle that scores (``score_file`` + ``file_events``, as ``detect``), registered as a model row.
``worker``
    The background thread that scores queued recordings; ``on_detection`` callbacks.
``sampling``
    The review queue's stratified sample (species x score bin) and the precision it estimates
    (per-bin Wilson intervals; the stratified estimate per threshold): pure functions.
``views``, ``queries``, ``media``, ``access``, ``docs``, ``routes``, ``app``
    The HTTP API: JSON of rows, filtered lists, WAV and PNG of a detection, who may read and write,
    an offline ``/docs`` page, the endpoints and the FastAPI application.
``messages``, ``mqtt``
    Sensor messages (Project Echo's and ``echoengine.audio/1``) and the MQTT bridge.
``lock``
    One server per store: an exclusive lock on ``STORE/serve.lock`` for the server's life.
``server``
    :func:`~echoengine.service.server.open_service` and :func:`~echoengine.service.server.serve`.

Nothing is imported here, so that importing one module does not import FastAPI or the model's runtime.
"""
