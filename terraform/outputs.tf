output "service_urls" {
  description = "Each function's Cloud Run service URL (deterministic: https://<service>-<project number>.<region>.run.app)."
  value       = local.service_urls
}

output "service_uris" {
  description = "Each service's primary URI as Cloud Run reports it (the same service as service_urls)."
  value       = { for name, s in google_cloud_run_v2_service.function : name => s.uri }
}

output "relay_url" {
  description = "The relay: the web UI and the WebSocket (/ws/chat)."
  value       = local.service_urls["relay"]
}

output "api_url" {
  description = "The REST API (/api/*, /chat, /stats, /health)."
  value       = local.service_urls["api"]
}

output "app_url" {
  description = "Where browsers go: https://<domain> when var.domain is set (one origin for the UI and the API), else the relay URL."
  value       = local.lb_enabled ? "https://${var.domain}" : local.service_urls["relay"]
}

output "load_balancer_ip" {
  description = "The address var.domain's A record must point at (null without a domain)."
  value       = one(google_compute_global_address.lb[*].address)
}

output "bucket" {
  description = "The blob bucket (DEVGEM_BUCKET)."
  value       = google_storage_bucket.blobs.name
}

output "cloudbuild_sources_bucket" {
  description = "Where `gcloud builds submit` stages DevGem's source (--gcs-source-staging-dir=gs://<this>/source)."
  value       = google_storage_bucket.cloudbuild_sources.name
}

output "topics" {
  description = "DevGem's Pub/Sub topics: logical name (common/src/events) => Pub/Sub topic name."
  value       = { for key, t in google_pubsub_topic.topic : key => t.name }
}

output "dead_letter_topics" {
  description = "Each push subscription's dead-letter topic (kept in a pull subscription of the same name)."
  value       = { for key, t in google_pubsub_topic.dead_letter : key => t.name }
}

output "subscriptions" {
  description = "Each push subscription and its endpoint."
  value       = { for key, s in google_pubsub_subscription.push : s.name => s.push_config[0].push_endpoint }
}

output "topic_prefix" {
  description = "DEVGEM_TOPIC_PREFIX, for running the CLI against this deployment."
  value       = local.topic_prefix
}

output "firestore_database" {
  description = "The Firestore database (DEVGEM_FIRESTORE_DATABASE)."
  value       = google_firestore_database.store.name
}

output "image_repository" {
  description = "The Artifact Registry repository: DevGem's image is <this>/devgem, users' images <this>/apps/..."
  value       = local.image_registry
}

output "service_accounts" {
  description = "The service account of each function and of the push invoker, users' builds and services, the schedule and the release."
  value = merge(
    { for name, sa in google_service_account.function : name => sa.email },
    {
      push_invoker = google_service_account.push_invoker.email
      user_builds  = google_service_account.user_builds.email
      apps         = google_service_account.apps.email
      scheduler    = google_service_account.scheduler.email
      release      = google_service_account.release.email
    },
  )
}

output "janitor_job" {
  description = "The janitor's Cloud Run job (run by Cloud Scheduler on var.janitor_schedule)."
  value       = google_cloud_run_v2_job.janitor.name
}

output "log_sink_writer_identity" {
  description = "The Log Router sink's identity (allowed to publish to log-entries)."
  value       = google_logging_project_sink.user_logs.writer_identity
}

output "cloudbuild_command" {
  description = "Builds DevGem's image from this checkout and rolls every service and the janitor job out to it."
  value = join(" ", [
    "gcloud builds submit --config cloudbuild.yaml",
    "--project=${var.project_id} --region=${var.region}",
    "--service-account=${google_service_account.release.id}",
    "--gcs-source-staging-dir=gs://${google_storage_bucket.cloudbuild_sources.name}/source",
    "--substitutions=SHORT_SHA=$(git rev-parse --short HEAD),_REGION=${var.region},_PREFIX=${var.name_prefix},_REPOSITORY=${var.artifact_repository_id}",
  ])
}
