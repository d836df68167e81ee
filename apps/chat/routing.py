from django.urls import path

from apps.training.consumers import TrainingProgressConsumer

from .consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/v1/chat/", ChatConsumer.as_asgi()),
    path("ws/v1/training/<str:job_id>/", TrainingProgressConsumer.as_asgi()),
]
