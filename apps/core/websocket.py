from channels.security.websocket import OriginValidator
from django.conf import settings


class BrowserOriginValidator(OriginValidator):
    """Refuse browsers from foreign origins; allow clients that send no Origin.

    Origin checks stop cross-site websocket hijacking, which needs a browser
    (and its cookies). Non-browser clients send no Origin and must present an
    API key anyway, so refusing them would protect nothing.
    """

    def __init__(self, application):
        allowed = ["*"] if settings.DEBUG else list(settings.ALLOWED_HOSTS)
        super().__init__(application, allowed)

    def valid_origin(self, parsed_origin):
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)
