# Every log line of users' services reaches the monitor: a Log Router sink publishes the matching
# LogEntries to the log-entries topic, which the monitor-log-entries subscription pushes to the
# monitor function. Users' revisions are those labelled devgem.dev/owner (the monitor's
# OWNER_LABEL) or named under var.user_service_prefix; DevGem's own services never match (the
# monitor would otherwise read its own logs), and neither do audit logs.

locals {
  devgem_services_regex = "^${var.name_prefix}-(${join("|", sort(keys(local.services)))})$"

  user_logs_filter = <<-EOT
    resource.type="cloud_run_revision"
    AND (labels."devgem.dev/owner":* OR resource.labels.service_name=~"^${var.user_service_prefix}")
    AND NOT resource.labels.service_name=~"${local.devgem_services_regex}"
    AND NOT logName:"cloudaudit.googleapis.com"
  EOT
}

resource "google_logging_project_sink" "user_logs" {
  project                = var.project_id
  name                   = "${var.name_prefix}-user-logs"
  description            = "Users' Cloud Run logs to the DevGem monitor"
  destination            = "pubsub.googleapis.com/${google_pubsub_topic.topic["log-entries"].id}"
  filter                 = local.user_logs_filter
  unique_writer_identity = true
}

# The sink writes as its own identity, which may publish to log-entries and nothing else.
resource "google_pubsub_topic_iam_member" "user_logs_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.topic["log-entries"].name
  role    = "roles/pubsub.publisher"
  member  = google_logging_project_sink.user_logs.writer_identity
}
