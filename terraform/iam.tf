# Identities and least-privilege grants. One service account per function (local.functions),
# plus:
#   push_invoker  signs Pub/Sub's push requests (OIDC); may only invoke the push-receiving services
#   user_builds   the identity users' Cloud Build builds run as: push to the apps/ images, write logs
#   apps          the identity users' Cloud Run services run as: read the secrets DevGem stored
#   scheduler     lets Cloud Scheduler start the janitor job, nothing else
#   release       the identity cloudbuild.yaml runs as: push DevGem's image, roll out DevGem's services
# Every binding is additive (google_*_iam_member): nothing here replaces a policy.

resource "google_service_account" "function" {
  for_each = local.functions

  project      = var.project_id
  account_id   = "${var.name_prefix}-${each.key}"
  display_name = "DevGem ${each.key} function"
  description  = "Runs `devgem serve ${each.key}`; roles from terraform/main.tf local.functions."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "push_invoker" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-pusher"
  display_name = "DevGem Pub/Sub push invoker"
  description  = "The OIDC identity of Pub/Sub push requests to DevGem's functions (DEVGEM_PUSH_SERVICE_ACCOUNT)."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "user_builds" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-builds"
  display_name = "DevGem users' builds"
  description  = "Users' Cloud Build builds run as this account: it may push images under apps/ and write build logs."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "apps" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-apps"
  display_name = "DevGem users' services"
  description  = "Users' Cloud Run services run as this account (never as a DevGem function)."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-cron"
  display_name = "DevGem janitor schedule"
  description  = "Cloud Scheduler's identity when it runs the janitor job."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "release" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-release"
  display_name = "DevGem release (cloudbuild.yaml)"
  description  = "cloudbuild.yaml runs as this account: pushes DevGem's image and rolls the services and the janitor job out."

  depends_on = [google_project_service.apis]
}

# --- The functions -------------------------------------------------------------------------

resource "google_project_iam_custom_role" "secret_writer" {
  project     = var.project_id
  role_id     = local.secret_writer_role_id
  title       = "DevGem secret writer"
  description = "Store values marked secret (create secrets, add versions, find the latest) without reading any value."
  permissions = [
    "secretmanager.secrets.create",
    "secretmanager.secrets.get",
    "secretmanager.versions.add",
    "secretmanager.versions.get",
    "secretmanager.versions.list",
  ]
}

locals {
  function_project_roles = merge([
    for name, f in local.functions : {
      for role in f.project_roles : "${name} ${role}" => { function = name, role = role }
    }
  ]...)
  function_topic_publishers = merge([
    for name, f in local.functions : {
      for topic in f.publishes : "${name} ${topic}" => { function = name, topic = topic }
    }
  ]...)
  function_bucket_roles = { for name, f in local.functions : name => f.bucket_role if f.bucket_role != null }
}

resource "google_project_iam_member" "function" {
  for_each = local.function_project_roles

  project = var.project_id
  role    = each.value.role
  member  = "serviceAccount:${google_service_account.function[each.value.function].email}"

  depends_on = [google_project_iam_custom_role.secret_writer]
}

resource "google_pubsub_topic_iam_member" "function_publisher" {
  for_each = local.function_topic_publishers

  project = var.project_id
  topic   = google_pubsub_topic.topic[each.value.topic].name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

resource "google_storage_bucket_iam_member" "function" {
  for_each = local.function_bucket_roles

  bucket = google_storage_bucket.blobs.name
  role   = each.value
  member = "serviceAccount:${google_service_account.function[each.key].email}"
}

# build submits users' builds as user_builds (and only as that account).
resource "google_service_account_iam_member" "build_acts_as_user_builds" {
  service_account_id = google_service_account.user_builds.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function["build"].email}"
}

# deploy creates users' services running as apps (and only as that account).
#
# Per-user identities (the Cloud Run adapter's AppIdentity::PerUser, used when
# DEVGEM_APP_SERVICE_ACCOUNT is not set: an account dg-u-<hash> per user, reading only the
# secrets of its own env) are not granted here. deploy would need:
#   - roles/iam.serviceAccountCreator on the project, to create the accounts;
#   - iam.serviceAccounts.actAs on each account it creates. They are created at run time, so only
#     a project-wide roles/iam.serviceAccountUser could grant it, and that would let deploy run
#     code as any DevGem function's account (IAM conditions cannot narrow it: service accounts
#     have no resource attributes). The check forbids it, rightly;
#   - secretmanager.secrets.getIamPolicy and setIamPolicy on users' secrets, to let each account
#     read its own (a custom role bound with a condition on the secrets' names).
# Per-user identities belong in a project of their own for users' accounts, where deploy can hold
# serviceAccountCreator and serviceAccountUser without reaching DevGem's own accounts.
resource "google_service_account_iam_member" "deploy_acts_as_apps" {
  service_account_id = google_service_account.apps.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function["deploy"].email}"
}

# The janitor deletes images of pruned builds under apps/ (repoAdmin: manage artifacts, not the repository).
resource "google_artifact_registry_repository_iam_member" "janitor" {
  project    = var.project_id
  location   = var.region
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.repoAdmin"
  member     = "serviceAccount:${google_service_account.function["janitor"].email}"
}

resource "google_project_iam_member" "chat_vertex" {
  count = var.enable_vertex_ai ? 1 : 0

  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = "serviceAccount:${google_service_account.function["chat"].email}"
}

resource "google_secret_manager_secret_iam_member" "chat_gemini_key" {
  count = var.gemini_api_key_secret == "" ? 0 : 1

  project   = var.project_id
  secret_id = var.gemini_api_key_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function["chat"].email}"
}

# --- Users' builds and services -------------------------------------------------------------

resource "google_artifact_registry_repository_iam_member" "user_builds_writer" {
  project    = var.project_id
  location   = var.region
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.user_builds.email}"
}

resource "google_project_iam_member" "user_builds_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.user_builds.email}"
}

# Users' services read their secret env from Secret Manager as apps. All users' services share
# this account, so this is project-wide (see terraform/README.md, "Limits").
resource "google_project_iam_member" "apps_secrets" {
  project = var.project_id
  role    = "roles/secretmanager.secretAccessor"
  member  = "serviceAccount:${google_service_account.apps.email}"
}

# --- Pub/Sub's push identity -----------------------------------------------------------------

# Pub/Sub's service agent mints the push invoker's OIDC tokens.
resource "google_service_account_iam_member" "pubsub_mints_push_tokens" {
  service_account_id = google_service_account.push_invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent

  depends_on = [google_project_service.apis]
}

# --- DevGem's own release (cloudbuild.yaml) ---------------------------------------------------

resource "google_artifact_registry_repository_iam_member" "release_writer" {
  project    = var.project_id
  location   = var.region
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.release.email}"
}

resource "google_project_iam_member" "release_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.release.email}"
}

resource "google_storage_bucket_iam_member" "release_reads_sources" {
  bucket = google_storage_bucket.cloudbuild_sources.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.release.email}"
}

# Rolling a service or the job out to a new image deploys a revision that runs as the function's
# account, which needs actAs on exactly those accounts.
resource "google_service_account_iam_member" "release_acts_as_functions" {
  for_each = local.functions

  service_account_id = google_service_account.function[each.key].name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.release.email}"
}

resource "google_cloud_run_v2_service_iam_member" "release" {
  for_each = local.services

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.function[each.key].name
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.release.email}"
}

resource "google_cloud_run_v2_job_iam_member" "release" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_job.janitor.name
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.release.email}"
}
