"""Images a chat request carried, stored once and referenced by id (docs/multimodal.md).

A request's messages hold `{"type": "image", "image_id": ...}` parts, never the pixels: the broker message
is the request id, the request row holds ids, and the worker reads the bytes from here. One row per
(user, content hash): a client that re-sends the same picture with every turn of a conversation stores it
once. Video parts become the frames sampled from them, stored here as images.
"""
import uuid

from django.conf import settings
from django.db import models


class StoredImage(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="stored_images")
    sha256 = models.CharField(max_length=64, help_text="Of the stored bytes: the same picture is stored once.")
    format = models.CharField(max_length=10, help_text="Pillow's format name: PNG, JPEG, WEBP, GIF.")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bytes = models.PositiveIntegerField()
    data = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "sha256"], name="vision_image_once_per_user")]

    def __str__(self) -> str:
        return f"{self.format} {self.width}x{self.height} ({self.id})"
