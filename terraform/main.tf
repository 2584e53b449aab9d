# DevGem on GCP: the tables everything else is generated from.
#
# local.functions and local.subscriptions are the single source of truth for what runs and who
# receives what; scripts/check-terraform.py cross-checks them against the Rust code
# (cli/src/functions.rs, cli/src/up.rs, common/src/events/mod.rs) on every test run.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  project_number = data.google_project.this.number
  topic_prefix   = var.topic_prefix == null ? "${var.name_prefix}-" : var.topic_prefix
  bucket_name    = var.bucket_name == null ? "${var.project_id}-${var.name_prefix}-blobs" : var.bucket_name
  image_registry = "${var.region}-docker.pkg.dev/${var.project_id}/${var.artifact_repository_id}"
  labels         = merge({ "app" = "devgem", "managed-by" = "terraform" }, var.labels)

  # The custom role that lets a function store secret values (create secrets, add versions) but
  # not read them. Its full name is built here, not read from the resource, so that the for_each
  # keys of the bindings are known at plan time.
  secret_writer_role_id = "${replace(var.name_prefix, "-", "_")}_secretWriter"
  secret_writer_role    = "projects/${var.project_id}/roles/${local.secret_writer_role_id}"

  # Every function of cli/src/functions.rs. kind: "service" (a Cloud Run service running
  # `devgem serve <function>`) or "job" (the janitor: `devgem serve janitor --once`).
  # public: invokable by allUsers (browsers reach the relay and the api); the others only take
  # Pub/Sub pushes signed by the push invoker.
  # publishes: the topics (keys of local.topics) the function publishes to, and nothing else.
  # project_roles: project-level roles; bucket_role: its role on the blob bucket (or null).
  # Roles on single resources (actAs on one service account, the Artifact Registry repository,
  # one secret) are in iam.tf. No primitive role (owner, editor, viewer) anywhere.
  functions = {
    chat = {
      kind          = "service"
      public        = false
      publishes     = ["deployments", "control"]
      bucket_role   = "roles/storage.objectViewer"
      project_roles = ["roles/datastore.user", "roles/logging.viewer", "roles/run.viewer", local.secret_writer_role]
      memory        = "1Gi"
      timeout       = "300s"
      concurrency   = 40
    }
    analyze = {
      kind          = "service"
      public        = false
      publishes     = ["builds"]
      bucket_role   = "roles/storage.objectAdmin"
      project_roles = ["roles/datastore.user"]
      memory        = "1Gi"
      timeout       = "600s"
      concurrency   = 8
    }
    build = {
      kind          = "service"
      public        = false
      publishes     = ["builds", "releases"]
      bucket_role   = "roles/storage.objectAdmin"
      project_roles = ["roles/datastore.user", "roles/cloudbuild.builds.editor", "roles/logging.viewer"]
      memory        = "512Mi"
      timeout       = "300s"
      concurrency   = 40
    }
    # deploy runs infra/src/gcp/cloudrun.rs. run.admin rather than run.developer: making a user's
    # service public is run.services.setIamPolicy, which run.developer lacks, and run.admin is the
    # least predefined role that has it. logging.viewer: a failed revision's last log lines, which
    # the repairs read.
    deploy = {
      kind          = "service"
      public        = false
      publishes     = ["builds"]
      bucket_role   = "roles/storage.objectViewer"
      project_roles = ["roles/datastore.user", "roles/run.admin", "roles/logging.viewer"]
      memory        = "512Mi"
      timeout       = "900s"
      concurrency   = 40
    }
    monitor = {
      kind          = "service"
      public        = false
      publishes     = ["alerts"]
      bucket_role   = null
      project_roles = ["roles/datastore.user"]
      memory        = "512Mi"
      timeout       = "60s"
      concurrency   = 80
    }
    relay = {
      kind          = "service"
      public        = true
      publishes     = ["chat-turns"]
      bucket_role   = null
      project_roles = ["roles/datastore.user"]
      memory        = "512Mi"
      timeout       = "3600s"
      concurrency   = 1000
    }
    api = {
      kind          = "service"
      public        = true
      publishes     = ["chat-turns", "deployments", "control"]
      bucket_role   = "roles/storage.objectViewer"
      project_roles = ["roles/datastore.user", "roles/logging.viewer", "roles/run.viewer", local.secret_writer_role]
      memory        = "512Mi"
      timeout       = "300s"
      concurrency   = 80
    }
    janitor = {
      kind          = "job"
      public        = false
      publishes     = ["deployments", "builds", "releases"]
      bucket_role   = "roles/storage.objectAdmin"
      project_roles = ["roles/datastore.user", "roles/run.developer", "roles/cloudbuild.builds.editor"]
      memory        = "512Mi"
      timeout       = "240s"
      concurrency   = 1
    }
  }

  services = { for name, f in local.functions : name => f if f.kind == "service" }

  # Cloud Run service names and their deterministic URLs
  # (https://<service>-<project number>.<region>.run.app), known before the services exist: this
  # breaks the cycle "a service's env holds its own URL (DEVGEM_PUSH_AUDIENCE)". The same URL is
  # the push endpoint's base and the OIDC audience, and it is added to each service's
  # custom_audiences so Cloud Run's IAM check accepts it whichever run.app URL is primary.
  service_name = { for name in keys(local.functions) : name => "${var.name_prefix}-${name}" }
  service_urls = { for name in keys(local.services) : name => "https://${local.service_name[name]}-${local.project_number}.${var.region}.run.app" }

  # The topics of common/src/events/mod.rs (Topic::name). ordered: our own CloudEvents carry
  # ordering keys (a deployment's events in order); the two foreign topics do not.
  topics = {
    "chat-turns"   = { name = "${local.topic_prefix}chat-turns", ordered = true }
    "deployments"  = { name = "${local.topic_prefix}deployments", ordered = true }
    "builds"       = { name = "${local.topic_prefix}builds", ordered = true }
    "cloud-builds" = { name = "cloud-builds", ordered = false }
    "releases"     = { name = "${local.topic_prefix}releases", ordered = true }
    "control"      = { name = "${local.topic_prefix}control", ordered = true }
    "log-entries"  = { name = "${local.topic_prefix}log-entries", ordered = false }
    "alerts"       = { name = "${local.topic_prefix}alerts", ordered = true }
  }

  # The push subscriptions of cli/src/up.rs, one for one: name => topic, the function that
  # receives it and the route of its router. Each gets a dead-letter topic of its own.
  # ack_deadline_seconds is how long a push request may take; analysis (a git fetch and the
  # walk) and a release (a revision starting and answering) take longest.
  subscriptions = {
    "chat-turns"          = { topic = "chat-turns", function = "chat", push_route = "/push/chat-turns", ack_deadline_seconds = 300 }
    "analyze-deployments" = { topic = "deployments", function = "analyze", push_route = "/push/deployments", ack_deadline_seconds = 600 }
    "build-builds"        = { topic = "builds", function = "build", push_route = "/push/builds", ack_deadline_seconds = 120 }
    "build-cloud-builds"  = { topic = "cloud-builds", function = "build", push_route = "/push/cloud-builds", ack_deadline_seconds = 120 }
    "deploy-releases"     = { topic = "releases", function = "deploy", push_route = "/push/releases", ack_deadline_seconds = 600 }
    "analyze-control"     = { topic = "control", function = "analyze", push_route = "/push/control", ack_deadline_seconds = 60 }
    "build-control"       = { topic = "control", function = "build", push_route = "/push/control", ack_deadline_seconds = 60 }
    "deploy-control"      = { topic = "control", function = "deploy", push_route = "/push/control", ack_deadline_seconds = 600 }
    "monitor-log-entries" = { topic = "log-entries", function = "monitor", push_route = "/push/log-entries", ack_deadline_seconds = 60 }
    "chat-alerts"         = { topic = "alerts", function = "chat", push_route = "/push/alerts", ack_deadline_seconds = 300 }
  }

  # The functions some subscription pushes to: their push invoker binding.
  push_functions = toset([for s in local.subscriptions : s.function])

  # What every function reads from its environment (infra/src/gcp/config.rs and the adapters).
  common_env = {
    GOOGLE_CLOUD_PROJECT        = var.project_id
    DEVGEM_STORE                = "firestore"
    DEVGEM_BUS                  = "pubsub"
    DEVGEM_BLOBS                = "gcs"
    DEVGEM_BUILDER              = "cloudbuild"
    DEVGEM_RUNTIME              = "cloudrun"
    DEVGEM_SECRETS              = "secretmanager"
    DEVGEM_BUCKET               = local.bucket_name
    DEVGEM_TOPIC_PREFIX         = local.topic_prefix
    DEVGEM_FIRESTORE_DATABASE   = var.firestore_database
    DEVGEM_PUSH_SERVICE_ACCOUNT = google_service_account.push_invoker.email
    DEVGEM_REGION               = var.region
    RUST_LOG                    = var.rust_log
  }

  # Settings only some functions read.
  function_env = {
    chat = merge(
      { DEVGEM_CHAT_MAX_INSTANCES = tostring(lookup(var.max_instances, "chat", 10)) },
      { for k, v in { DEVGEM_GEMINI_API_KEY_SECRET = var.gemini_api_key_secret } : k => v if v != "" },
      var.chat_env,
    )
    analyze = {}
    build = {
      # Where users' images go, and the identity their builds run as (never DevGem's own).
      DEVGEM_IMAGE_REPOSITORY      = "${local.image_registry}/apps"
      DEVGEM_BUILD_SERVICE_ACCOUNT = google_service_account.user_builds.email
    }
    deploy = {
      # The identity users' services run as, and the prefix of their names. Setting
      # DEVGEM_APP_SERVICE_ACCOUNT selects the Cloud Run adapter's shared identity; without it
      # the adapter makes an account per user, which this configuration does not grant (iam.tf,
      # "Per-user identities").
      DEVGEM_APP_SERVICE_ACCOUNT = google_service_account.apps.email
      DEVGEM_SERVICE_PREFIX      = var.user_service_prefix
    }
    monitor = {}
    relay = {
      DEVGEM_API_URL = local.service_urls["api"]
    }
    api     = {}
    janitor = {}
  }

  required_apis = [
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "pubsub.googleapis.com",
    "firestore.googleapis.com",
    "storage.googleapis.com",
    "secretmanager.googleapis.com",
    "logging.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "cloudresourcemanager.googleapis.com",
  ]
  optional_apis = concat(
    var.enable_vertex_ai ? ["aiplatform.googleapis.com"] : [],
    var.domain == "" ? [] : ["compute.googleapis.com"],
  )

  pubsub_service_agent = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_project_service" "apis" {
  for_each = toset(concat(local.required_apis, local.optional_apis))

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
