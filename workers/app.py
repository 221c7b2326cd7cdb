"""The Celery app for ``celery -A workers.app``; everything else builds its own with create_app."""

from workers.celery_app import create_app
from workers.settings import SettingsError, get_settings

try:
    app = create_app(get_settings())
except SettingsError as error:
    raise SystemExit(f"conveyor: {error}") from None
