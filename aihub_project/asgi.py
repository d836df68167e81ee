import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aihub_project.settings")
# Django must be set up before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from aihub_project.websockets import websocket_urlpatterns  # noqa: E402
from apps.core.request_size import RequestBodyLimit  # noqa: E402
from apps.core.websocket import BrowserOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": RequestBodyLimit(django_asgi_app),
        "websocket": BrowserOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
