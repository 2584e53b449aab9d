# One Cloud Run service per function, all from the one image running `devgem serve <function>`,
# and the janitor as a Cloud Run job run by Cloud Scheduler.
#
# The image is set at creation only: cloudbuild.yaml rolls new images out, and Terraform ignores
# the image afterwards so an apply never rolls a service back to var.image.

resource "google_cloud_run_v2_service" "function" {
  for_each = local.services

  project             = var.project_id
  location            = var.region
  name                = local.service_name[each.key]
  description         = "DevGem ${each.key} function (devgem serve ${each.key})"
  ingress             = "INGRESS_TRAFFIC_ALL"
  labels              = merge(local.labels, { "devgem-function" = each.key })
  deletion_protection = var.deletion_protection
  # The deterministic URL is the audience of Pub/Sub's push tokens (local.service_urls).
  custom_audiences = [local.service_urls[each.key]]

  template {
    service_account                  = google_service_account.function[each.key].email
    timeout                          = each.value.timeout
    max_instance_request_concurrency = each.value.concurrency
    # The relay's WebSockets resume anywhere, but staying on one instance saves a backlog read.
    session_affinity = each.key == "relay"
    labels           = merge(local.labels, { "devgem-function" = each.key })

    scaling {
      min_instance_count = 0
      max_instance_count = lookup(var.max_instances, each.key, 10)
    }

    containers {
      image = var.image
      args  = ["serve", each.key]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = each.value.memory
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      # What every function reads (local.common_env: store, bus, blobs, project, topics).
      dynamic "env" {
        for_each = local.common_env
        content {
          name  = env.key
          value = env.value
        }
      }

      # The audience Pub/Sub's push tokens must carry: this service's own (deterministic) URL.
      env {
        name  = "DEVGEM_PUSH_AUDIENCE"
        value = local.service_urls[each.key]
      }

      dynamic "env" {
        for_each = local.function_env[each.key]
        content {
          name  = env.key
          value = env.value
        }
      }

      # /healthz answers once the router runs and the store answers.
      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 3
        timeout_seconds       = 2
        failure_threshold     = 20
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [
      template[0].containers[0].image,
      client,
      client_version,
    ]
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.function,
    google_pubsub_topic_iam_member.function_publisher,
    google_storage_bucket_iam_member.function,
    google_firestore_database.store,
  ]
}

# Browsers reach the relay (web UI, WebSocket) and the api (REST) directly.
resource "google_cloud_run_v2_service_iam_member" "public" {
  for_each = { for name, f in local.services : name => f if f.public }

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.function[each.key].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# The push-only functions take requests from Pub/Sub's push invoker and nobody else.
resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  for_each = local.push_functions

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.function[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push_invoker.email}"
}

# The janitor: one sweep per execution (`devgem serve janitor --once`).
resource "google_cloud_run_v2_job" "janitor" {
  project             = var.project_id
  location            = var.region
  name                = local.service_name["janitor"]
  labels              = merge(local.labels, { "devgem-function" = "janitor" })
  deletion_protection = var.deletion_protection

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.function["janitor"].email
      # Shorter than the schedule's period, so executions do not pile up; the next run retries.
      timeout     = local.functions["janitor"].timeout
      max_retries = 0

      containers {
        image = var.image
        args  = ["serve", "janitor", "--once"]

        resources {
          limits = {
            cpu    = "1"
            memory = local.functions["janitor"].memory
          }
        }

        dynamic "env" {
          for_each = local.common_env
          content {
            name  = env.key
            value = env.value
          }
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [
      template[0].template[0].containers[0].image,
      client,
      client_version,
    ]
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.function,
    google_pubsub_topic_iam_member.function_publisher,
    google_storage_bucket_iam_member.function,
    google_firestore_database.store,
  ]
}

resource "google_cloud_run_v2_job_iam_member" "scheduler" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_job.janitor.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_cloud_scheduler_job" "janitor" {
  project          = var.project_id
  region           = var.region
  name             = "${var.name_prefix}-janitor"
  description      = "Runs the DevGem janitor job (stuck deployments, old revisions and blobs)."
  schedule         = var.janitor_schedule
  time_zone        = var.janitor_time_zone
  attempt_deadline = "60s"

  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "https://run.googleapis.com/v2/projects/${var.project_id}/locations/${var.region}/jobs/${google_cloud_run_v2_job.janitor.name}:run"

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_cloud_run_v2_job_iam_member.scheduler]
}
