"""The HTTP routes. Every API view is an apps.core.endpoints.Endpoint (docs/api.md: adding an endpoint)."""
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.accounts.views import ApiKeyDetailView, ApiKeyListView, MeView
from apps.audio.views import SpeechView, TranscriptionsView, TranslationsView
from apps.catalog.views import (
    ModelDetailView,
    ModelListView,
    ModelLoadView,
    ModelStatusView,
    ModelUnloadView,
)
from apps.chat.views import (
    ChatCompletionsView,
    ConversationDetailView,
    ConversationListView,
    ConversationSearchView,
    TextCompletionsView,
)
from apps.embeddings.views import EmbeddingsView
from apps.monitoring.views import HealthView, LivenessView, SystemAnalyticsView, SystemMetricsView, metrics_view
from apps.responses.views import ResponseDetailView, ResponsesView
from apps.training import fine_tuning_views as fine_tuning
from apps.training import views as training
from apps.vectorstores import views as vector_stores

api_v1 = [
    path("chat/completions", ChatCompletionsView.as_view(), name="chat-completions"),
    path("completions", TextCompletionsView.as_view(), name="completions"),
    path("chat/conversations", ConversationListView.as_view(), name="conversation-list"),
    path("chat/conversations/search", ConversationSearchView.as_view(), name="conversation-search"),
    path("chat/conversations/<uuid:conversation_id>", ConversationDetailView.as_view(),
         name="conversation-detail"),
    path("embeddings", EmbeddingsView.as_view(), name="embeddings"),
    path("audio/transcriptions", TranscriptionsView.as_view(), name="audio-transcriptions"),
    path("audio/translations", TranslationsView.as_view(), name="audio-translations"),
    path("audio/speech", SpeechView.as_view(), name="audio-speech"),
    path("responses", ResponsesView.as_view(), name="responses"),
    path("responses/<str:response_id>", ResponseDetailView.as_view(), name="response-detail"),
    path("models", ModelListView.as_view(), name="model-list"),
    path("models/status", ModelStatusView.as_view(), name="model-status"),
    path("models/load", ModelLoadView.as_view(), name="model-load"),
    path("models/unload", ModelUnloadView.as_view(), name="model-unload"),
    path("me", MeView.as_view(), name="me"),
    path("system/metrics", SystemMetricsView.as_view(), name="system-metrics"),
    path("system/analytics", SystemAnalyticsView.as_view(), name="system-analytics"),
    path("files", training.FileListView.as_view(), name="file-list"),
    path("files/<str:file_id>", training.FileDetailView.as_view(), name="file-detail"),
    path("training/jobs", training.JobListView.as_view(), name="training-job-list"),
    path("training/jobs/<str:job_id>", training.JobDetailView.as_view(), name="training-job-detail"),
    path("training/jobs/<str:job_id>/status", training.JobStatusView.as_view(), name="training-job-status"),
    path("training/jobs/<str:job_id>/cancel", training.JobCancelView.as_view(), name="training-job-cancel"),
    path("training/jobs/<str:job_id>/events", training.JobEventsView.as_view(), name="training-job-events"),
    path("training/jobs/<str:job_id>/checkpoints", training.JobCheckpointsView.as_view(),
         name="training-job-checkpoints"),
    path("fine_tuning/jobs", fine_tuning.FineTuningJobListView.as_view(), name="fine-tuning-job-list"),
    path("fine_tuning/jobs/<str:job_id>", fine_tuning.FineTuningJobDetailView.as_view(),
         name="fine-tuning-job-detail"),
    path("fine_tuning/jobs/<str:job_id>/cancel", fine_tuning.FineTuningJobCancelView.as_view(),
         name="fine-tuning-job-cancel"),
    path("fine_tuning/jobs/<str:job_id>/events", fine_tuning.FineTuningJobEventsView.as_view(),
         name="fine-tuning-job-events"),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", fine_tuning.FineTuningJobCheckpointsView.as_view(),
         name="fine-tuning-job-checkpoints"),
    path("vector_stores", vector_stores.VectorStoreListView.as_view(), name="vector-store-list"),
    path("vector_stores/<str:store_id>", vector_stores.VectorStoreDetailView.as_view(), name="vector-store-detail"),
    path("vector_stores/<str:store_id>/search", vector_stores.VectorStoreSearchView.as_view(),
         name="vector-store-search"),
    path("vector_stores/<str:store_id>/files", vector_stores.VectorStoreFileListView.as_view(),
         name="vector-store-file-list"),
    path("vector_stores/<str:store_id>/files/<str:file_id>", vector_stores.VectorStoreFileDetailView.as_view(),
         name="vector-store-file-detail"),
    path("vector_stores/<str:store_id>/file_batches", vector_stores.FileBatchListView.as_view(),
         name="vector-store-file-batch-list"),
    path("vector_stores/<str:store_id>/file_batches/<str:batch_id>", vector_stores.FileBatchDetailView.as_view(),
         name="vector-store-file-batch-detail"),
    path("vector_stores/<str:store_id>/file_batches/<str:batch_id>/cancel",
         vector_stores.FileBatchCancelView.as_view(), name="vector-store-file-batch-cancel"),
    path("vector_stores/<str:store_id>/file_batches/<str:batch_id>/files",
         vector_stores.FileBatchFilesView.as_view(), name="vector-store-file-batch-files"),
    path("keys", ApiKeyListView.as_view(), name="key-list"),
    path("keys/<int:key_id>", ApiKeyDetailView.as_view(), name="key-detail"),
    path("models/<path:model_id>", ModelDetailView.as_view(), name="model-detail"),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("health", HealthView.as_view(), name="health"),
    path("health/ready", HealthView.as_view(), name="health-ready"),
    path("health/live", LivenessView.as_view(), name="health-live"),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico on any page (the docs too); the file is a static one (WhiteNoise).
    path("favicon.ico", RedirectView.as_view(url=static("aihub/favicon.ico"), permanent=True), name="favicon"),
    path("metrics", metrics_view, name="prometheus-django-metrics"),  # django-prometheus behind an optional token
]

handler404 = "apps.core.errors.json_404"
handler500 = "apps.core.errors.json_500"
