"""The websocket routes of the project: each app provides consumers, the project composes them (asgi.py)."""
from django.urls import path

from apps.chat.consumers import ChatConsumer
from apps.training.consumers import TrainingProgressConsumer

websocket_urlpatterns = [
    path("ws/v1/chat/", ChatConsumer.as_asgi()),
    path("ws/v1/training/<str:job_id>/", TrainingProgressConsumer.as_asgi()),
]
